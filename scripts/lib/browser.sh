# Shared by scripts/test.sh: Debian's headless browser for the console's browser tests
# (tests/integration/console.rs drives it through Selenium). Installed when missing, as
# scripts/lib/pg.sh installs PostgreSQL; Selenium is handed /usr/bin/chromedriver, so nothing is
# ever downloaded by Selenium Manager.

ensure_chromium() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return; fi
  echo "chromium or chromedriver not found: installing Debian's chromium and chromium-driver packages" >&2
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
}
