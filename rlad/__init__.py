"""The user's face of the RLAD platform: the `rlad` command line."""
