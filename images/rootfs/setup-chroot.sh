#!/bin/bash
# Runs inside the freshly debootstrapped tree (chroot) once per recipe.
set -euo pipefail
useradd --create-home --shell /bin/bash --groups sudo user
passwd -d root >/dev/null
echo 'user ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/petrel-user
chmod 0440 /etc/sudoers.d/petrel-user
echo petrel > /etc/hostname
printf '127.0.0.1 localhost\n::1 localhost\n' > /etc/hosts
# Nothing mounted from fstab: petrel-init mounts what the guest needs.
: > /etc/fstab
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /usr/share/doc/* /usr/share/man/*
