"""Money: price tables (validated, effective-dated) and the cost of a request."""
