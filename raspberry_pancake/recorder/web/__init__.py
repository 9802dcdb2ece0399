"""The page: the server set-up (app), its handlers, the live-view model (live), JPEGs for viewers, login."""
