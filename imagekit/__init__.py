"""imagekit: turns a project into a bootable vorteil-layout disk image."""
