"""Training scripts for the small models shipped in ``models/`` (optional extra ``train``)."""
