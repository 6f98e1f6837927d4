"""The README's screenshots, taken from `llm-monitor demo` in headless Chromium.

Runs the demo into a temporary database (`--no-serve`), serves the dashboard on a free
port, logs in as the demo's Acme Corp and saves the overview and a few views, at 1366 px
wide and the overview also at 390 px (a phone). Needs Debian's chromium and
chromium-driver.

    .venv/bin/python scripts/screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from benchmark import free_port, wait_for_port  # scripts/ is on the path when run
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from llm_monitor.demo.setup import DEMO_ORGS

# name: (address, page width, page height)
PAGES = {
    "landing": ("/", 1366, 1100),
    "landing-phone": ("/", 390, 844),
    "by-family": ("/llm-monitor/by_family", 1366, 900),
    "timeline": ("/llm-monitor/timeline?granularity=day", 1366, 900),
    "summary": ("/llm-monitor/summary", 1366, 900),
    "by-model": ("/llm-monitor/by_model", 1366, 900),
    "recent-errors-phone": ("/llm-monitor/recent_errors", 390, 844),
}


@click.command()
@click.argument(
    "out_dir",
    default="datasette_config/screenshots",
    type=click.Path(file_okay=False, path_type=Path),
)
def main(out_dir: Path) -> None:
    """Save PNG screenshots of the demo's dashboard to OUT_DIR."""
    out_dir.mkdir(parents=True, exist_ok=True)
    llm_monitor = [sys.executable, "-m", "llm_monitor"]
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "demo.db")
        subprocess.run([*llm_monitor, "demo", "--file", db, "--no-serve"], check=True)
        port = free_port()
        server = subprocess.Popen([*llm_monitor, "--db", db, "dashboard", "--port", str(port)])
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for argument in ("--headless=new", "--no-sandbox", "--hide-scrollbars"):
            options.add_argument(argument)
        browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            wait_for_port(port)
            base = f"http://127.0.0.1:{port}"
            email, password, _ = DEMO_ORGS["Acme Corp"]
            browser.get(f"{base}/-/login")
            browser.find_element(By.ID, "email").send_keys(email)
            browser.find_element(By.ID, "password").send_keys(password)
            browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
            for name, (path, width, height) in PAGES.items():
                browser.set_window_size(width, height)
                inner = browser.execute_script("return [window.innerWidth, window.innerHeight]")
                browser.set_window_size(2 * width - inner[0], 2 * height - inner[1])
                browser.get(base + path)
                WebDriverWait(browser, 15).until(
                    lambda b: b.find_elements(By.CSS_SELECTOR, "#lm-chart svg .lm-mark")
                )
                time.sleep(0.5)  # the overview's other panels
                target = out_dir / f"{name}.png"
                browser.save_screenshot(str(target))
                click.echo(target)
        finally:
            browser.quit()
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
