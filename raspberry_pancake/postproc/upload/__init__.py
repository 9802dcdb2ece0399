"""Uploads to SFTP and FTP: a worker per destination, with its queue, and the triggers."""
