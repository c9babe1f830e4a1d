"""Hospitals as TFF workers in their own processes (or machines): records kept
on the hospital's disk, the coordinator reaching each over mutual TLS."""
