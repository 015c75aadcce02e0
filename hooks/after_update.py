"""Copier task, after an update: placeholder until the update hook lands."""
