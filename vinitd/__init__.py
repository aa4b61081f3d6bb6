"""vinitd: the PID 1 of a vorteil-layout micro-VM.

Standard library only: this package runs inside the guest. It also defines the two contracts
that imagekit and vmtest import: the VCFG model (`vinitd.vcfg`) and the disk layout
(`vinitd.layout`, `vinitd.gpt`).
"""
