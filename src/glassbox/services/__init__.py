"""Services own the server's logic; the API routers only validate and call them."""
