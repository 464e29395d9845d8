"""Fleets: many servers, the clusters they host, and how to drive them (placement, render, Ansible)."""
