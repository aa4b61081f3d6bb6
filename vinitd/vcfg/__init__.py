"""The VCFG: the configuration of a VM, as TOML on the way in and compact JSON on the disk."""
