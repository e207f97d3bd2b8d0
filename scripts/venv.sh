# Sourced by scripts: makes .venv with the Python tools the project uses, once. Pinned so a
# fresh machine gets what CI got.
if [ ! -x .venv/bin/moto_server ] || [ ! -f .venv/.voyage-tools-1 ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check \
    'moto[server]==5.*' 'standardwebhooks==1.*'
  touch .venv/.voyage-tools-1
fi
