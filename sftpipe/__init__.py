"""sftpipe: prepare supervised fine-tuning data reproducibly, and train on it."""

__version__ = "0.1.0"
