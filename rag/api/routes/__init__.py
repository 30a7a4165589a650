"""The routes of ``rag serve``, one module a concern, each with an ``add_routes`` that puts them on the app over
what ``rag.api.app.create_app`` opened (the collections, the request identifier)."""
