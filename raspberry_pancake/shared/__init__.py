"""What both programs use: message schema, logging, command lines, queues, secrets, systemd, retention."""
