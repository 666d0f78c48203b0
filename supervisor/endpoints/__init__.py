"""Serving endpoints (the successor of legacy serving): their configs and how they look in JSON.

Pure code only: what the API validates and shows and what the planner resolves. The store keeps
endpoints, the reconciler runs their entities, the gateway routes them.
"""
