#!/usr/bin/env bash
# Placeholder until the launch work lands: a one-node SLURM for the launch tests.
exit 0
