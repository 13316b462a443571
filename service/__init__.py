"""The FastAPI front end: validates, stores and answers; never runs a user's model."""
