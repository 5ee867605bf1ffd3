"""Peer methods behind the same forward contract as DMRNet (see ``dmrnet.methods``)."""
