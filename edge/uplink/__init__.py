"""SafeWatch package."""
