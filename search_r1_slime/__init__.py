"""Search-R1 for slime: everything of ours beside the modules slime and upstream users know by name.

The top-level modules keep upstream's names (``generate_with_search``, ``qa_em``,
``local_search_server``, ``google_search_server``) and the server package keeps its own
(``local_dense_retriever``); the shared HTTP plumbing, the preflight, data preparation,
evaluation and the demo live here, so that installing this project puts no generic module name
(``evaluate``, ``http_client``...) at the top level of site-packages.
"""
