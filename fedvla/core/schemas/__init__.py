"""Request and response models of the REST API (and the web forms), one module per resource.

The tables live in fedvla.core.models; these are the shapes clients send and receive.
"""
