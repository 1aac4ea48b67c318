"""Request and response models of the REST API (and the web forms), one module per resource.

The tables live in app.models; these are the shapes clients send and receive.
"""
