"""SOAP attachments and off-site file transfer (SPEC.md capability D).

SwA and MTOM/XOP framing, zip streams, split and reassemble with checksums.
Not built yet: the package exists so the card layout of SPEC.md holds; its
issue ("Attachments and off-site file transfer") fills it.
"""
