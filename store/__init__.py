"""Persistence shared by the API and the workers: settings, the SQLAlchemy models, the job state machine,
the store functions over jobs/metrics/checkpoints/datasets, the result store and job dispatch.

Dependencies point one way: store imports nothing of ours except plain config types from rlad_core.
"""
