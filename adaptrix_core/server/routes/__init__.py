"""The server's routes, one APIRouter per concern; the app factory includes each."""
