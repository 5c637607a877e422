"""HTTP serving: app factory, routes, schemas, micro-batching and the draw-a-digit page."""
