"""recfs: mount call-recording and content stores as a local drive."""
__version__ = "0.1.0"
