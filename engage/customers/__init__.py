"""What engage knows about a customer at one instant.

``facts`` holds the SQL for the interaction log and points ledger as of an
instant and owns what counts as engagement; ``recipients`` holds the
``Recipient`` shape that policy, templates and channels read, and loads it in
bulk. Below campaigns and templating, above the database layer.
"""
