"""Headless Chromium for the console's browser tests (selenium + Debian's chromium-driver).

    b = Browser("http://127.0.0.1:PORT")      # quit() in a cleanup
    b.login("admin", "password")
    b.get("/queue"); b.shot("queue")          # target/console-screenshots/queue.png

selenium comes from pip for the default python3 (tests/install-deps.sh); the driver is
/usr/bin/chromedriver, never one downloaded at run time.
"""

import http.client
import os
import urllib.parse

from harness import REPO, HarnessError, wait_until

SHOTS = os.path.join(REPO, "target", "console-screenshots")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")


class Browser:
    def __init__(self, base, width=1366, height=900):
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError as e:
            raise HarnessError("selenium is not installed for %s (tests/install-deps.sh): %s" % (os.sys.executable, e))
        if not os.access(CHROMEDRIVER, os.X_OK):
            raise HarnessError("%s missing (apt-get install chromium chromium-driver)" % CHROMEDRIVER)
        opts = webdriver.ChromeOptions()
        for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                  "--window-size=%d,%d" % (width, height), "--lang=en-GB"):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.base = base
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(30)

    def quit(self):
        try:
            self.driver.quit()
        except Exception:
            pass

    # --- navigation
    def get(self, path):
        self.driver.get(self.base + path)
        return self

    def css(self, selector):
        from selenium.webdriver.common.by import By
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector):
        from selenium.webdriver.common.by import By
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def text(self, selector="main"):
        return self.css(selector).text

    def h1(self):
        return self.text("h1")

    def path(self):
        return urllib.parse.urlsplit(self.driver.current_url).path

    def fill(self, selector, value):
        el = self.css(selector)
        el.clear()
        el.send_keys(value)
        return el

    def click(self, selector, timeout=20.0):
        """Click something that loads a new page, and wait until the new page is there: the
        old document carries a mark the new one does not have."""
        from selenium.common.exceptions import WebDriverException
        self.driver.execute_script("window.__consoleOldPage = true")
        self.css(selector).click()

        def loaded():
            try:
                return self.driver.execute_script(
                    "return !window.__consoleOldPage && document.readyState === 'complete'")
            except WebDriverException:
                return False  # between two documents
        wait_until(loaded, timeout, interval=0.05, what="the page after clicking %s" % selector)
        return self

    def login(self, user, password):
        self.get("/login")
        self.fill("#username", user)
        self.fill("#password", password)
        return self.click("form.login button")

    def wait_text(self, selector, needle, timeout=15.0, refresh=False):
        """Wait until the element's text contains needle (reloading the page if refresh)."""
        def found():
            if refresh:
                self.driver.refresh()
            try:
                return needle in self.text(selector)
            except Exception:
                return False
        return wait_until(found, timeout, interval=0.3, what="%r in %s" % (needle, selector))

    def shot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        path = os.path.join(SHOTS, name + ".png")
        # The whole page, not only the window: resize to the document's height first.
        h = self.driver.execute_script("return Math.max(document.body.scrollHeight, 600)")
        w = self.driver.get_window_size()["width"]
        self.driver.set_window_size(w, min(int(h) + 120, 4000))
        self.driver.save_screenshot(path)
        self.driver.set_window_size(w, 900)
        return path

    def severe_logs(self):
        return [l for l in self.driver.get_log("browser") if l.get("level") == "SEVERE"]

    def cookie_header(self):
        return "; ".join("%s=%s" % (c["name"], c["value"]) for c in self.driver.get_cookies())

    def csrf(self):
        return self.css("input[name=csrf]").get_attribute("value")


def request(base, method, path, form=None, cookie=None, headers=None, timeout=15):
    """(status, headers dict lower-cased, body text) of one plain request."""
    u = urllib.parse.urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    h = dict(headers or {})
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        h["Content-Type"] = "application/x-www-form-urlencoded"
    if cookie:
        h["Cookie"] = cookie
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace")
    finally:
        c.close()
