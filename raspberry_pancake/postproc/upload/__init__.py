"""Uploads: one worker per destination (SFTP, FTP) with its queue, its journal and its triggers."""
