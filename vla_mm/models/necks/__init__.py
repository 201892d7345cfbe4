"""Necks that turn backbone outputs into what OpenMMLab heads expect."""
