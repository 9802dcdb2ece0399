"""The page: the Tornado app and its handlers, the live-view model, JPEGs for viewers, login."""
