"""The HTTP surface: the RSGI app, its routes and its error bodies."""
