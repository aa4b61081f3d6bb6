"""vmtest: boots images in QEMU and asserts each stage of the boot."""
