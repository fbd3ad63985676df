"""nfx: move live network-function state between XDP NF instances."""
__version__ = "0.1.0"
