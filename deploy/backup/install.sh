#!/usr/bin/env bash
# VM3: install the nightly backup (backup.sh under travel-backup.timer) and restore.sh.
#
#   sudo deploy/backup/install.sh
#
# Safe to run again; /etc/travel-backup/env (the backup target) is kept once written.
set -euo pipefail

[[ $# -eq 0 ]] || { echo "usage: sudo $0" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "run as root (sudo)" >&2; exit 1; }
HERE=$(dirname "$(realpath "$0")")

apt-get install -y -q rsync openssh-client

install -d -o root -g root -m 0755 /usr/local/lib/travel-backup
install -o root -g root -m 0755 "$HERE/backup.sh" "$HERE/restore.sh" /usr/local/lib/travel-backup/
install -d -o postgres -g postgres -m 0700 /var/backups/travel
install -d -o root -g root -m 0755 /etc/travel-backup
if [[ ! -f /etc/travel-backup/env ]]; then
    install -o root -g root -m 0644 "$HERE/env.example" /etc/travel-backup/env
    echo "created /etc/travel-backup/env: check BACKUP_REMOTE" >&2
fi
# The key the backup host must accept from the postgres user.
if [[ ! -f /var/lib/postgresql/.ssh/id_ed25519 ]]; then
    runuser -u postgres -- mkdir -p -m 0700 /var/lib/postgresql/.ssh
    runuser -u postgres -- ssh-keygen -q -t ed25519 -N '' -C "travel-backup@$(hostname)" \
        -f /var/lib/postgresql/.ssh/id_ed25519
fi
install -o root -g root -m 0644 "$HERE/travel-backup.service" "$HERE/travel-backup.timer" \
    /etc/systemd/system/
systemctl daemon-reload
systemctl enable --now travel-backup.timer
echo "Backup host must accept this key (its ~backup/.ssh/authorized_keys):"
cat /var/lib/postgresql/.ssh/id_ed25519.pub
systemctl list-timers --no-pager travel-backup.timer
