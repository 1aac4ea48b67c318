"""The application's logic: REST routes and web pages both call these functions."""
