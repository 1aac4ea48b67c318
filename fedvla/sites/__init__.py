"""Flower's deployment engine on our side: node keys, the SuperLink's certificates and process,
node registration, and running a federation on the SuperLink."""
