"""The web page in a real browser (Debian's headless Chromium driven by Playwright) against the
real local stack (`local_stack`: S3/SQS/DynamoDB stand-ins, TorchServe, API and worker).

Screenshots are written to test-artifacts/ (gitignored); the run's summary lists their paths.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import failed
from tests.graphql_api.oidc_flow import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

# The flags that keep Chromium quiet on a closed network (see the team's browser notes).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# ImageNet classes a photo of a cat may honestly get as its top class.
CAT_CLASSES = ["tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx", "tiger"]
CAT_TITLE = re.compile(r"^(?:" + "|".join(re.escape(c) for c in CAT_CLASSES) + r") - \d{1,3}\.\d%$")

PROCESSING_TIMEOUT_MS = 120_000  # first inference on a busy 2-core machine can be slow
UI_TIMEOUT_MS = 20_000  # the machine is shared: generous waits for ordinary page updates
expect.set_options(timeout=UI_TIMEOUT_MS)


def _base_url(stack) -> str:
    return stack.api_url.rstrip("/")


def _record_csp_violations(page: Page) -> list[str]:
    """Every Content-Security-Policy violation on `page`, in whatever document it loads: the
    browser's console report and the page's `securitypolicyviolation` events."""
    found: list[str] = []
    page.on("console",
            lambda message: found.append(message.text) if "Content Security Policy" in message.text else None)
    page.expose_function("reportCspViolation", lambda violation: found.append(violation))
    page.add_init_script(  # runs before the page's own scripts, whatever the policy says
        "document.addEventListener('securitypolicyviolation', (e) =>"
        " window.reportCspViolation(`event: ${e.effectiveDirective} blocked ${e.blockedURI}`));"
    )
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Debian's `chromium` is not installed: run `make system-deps`")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def checked_page(browser: Browser, **context_options) -> Iterator[Page]:
    """A page in a browser context of its own (`context_options`: viewport, is_mobile, ...). Any
    JavaScript error or Content-Security-Policy violation on it fails the test once it closes."""
    context = browser.new_context(**context_options)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    csp_violations = _record_csp_violations(page)
    try:
        yield page
    finally:
        context.close()
    assert not script_errors, f"JavaScript errors on the page: {script_errors}"
    assert not csp_violations, f"Content-Security-Policy violations on the page: {csp_violations}"


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, screenshot) -> Iterator[Page]:
    """A desktop-sized checked page; on failure its last state is saved as failed-<test>.png."""
    with checked_page(browser, viewport={"width": 1280, "height": 900}) as page:
        yield page
        if failed(request):
            screenshot(page, f"failed-{request.node.name}")


@pytest.fixture(scope="session")
def chelsea_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image
    from skimage import data as skdata

    path = tmp_path_factory.mktemp("images") / "chelsea.jpg"
    Image.fromarray(skdata.chelsea()).save(path, "JPEG", quality=92)
    return path


@pytest.fixture(scope="module")
def account(local_stack) -> Callable[[str], str]:
    """`account(name)`: an account made once with `udagram user add NAME` (the password on stdin,
    as a script gives it), as a self-hoster makes one after `make up`."""
    made: set[str] = set()

    def add(name: str) -> str:
        if name not in made:
            local_stack.add_account(name, PASSWORD)
            made.add(name)
        return name

    return add


def _sign_in(page: Page, user: str, password: str = PASSWORD) -> None:
    """The page's Sign in button, then the built-in provider's login form."""
    page.get_by_test_id("sign-in-button").click()
    page.wait_for_url(re.compile(r"/auth/authorize\?"))
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def _kept_session(page: Page) -> dict:
    """What oidc-client-ts keeps for the signed-in user (localStorage: shared by the page's tabs)."""
    kept = page.evaluate("() => Object.entries(localStorage).filter(([key]) => key.startsWith('oidc.user:'))")
    assert len(kept) == 1, kept
    return json.loads(kept[0][1])


def test_sign_in_create_group_upload_watch_it_processed_delete_and_sign_out(
    local_stack, account, page: Page, chelsea_jpeg: Path, screenshot
):
    base = _base_url(local_stack)
    user = account(f"alice-{uuid.uuid4().hex[:6]}")
    group_name = f"Cats {uuid.uuid4().hex[:6]}"
    requests: list = []
    page.on("request", lambda request: requests.append(request))

    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Groups", level=1)).to_be_visible()

    # Sign in at the login form with the password: a wrong one and an unknown name are refused alike.
    _sign_in(page, user, "not the password")
    expect(page.get_by_test_id("sign-in-error")).to_have_text("Wrong user name or password.")
    screenshot(page, "sign-in-refused")
    page.get_by_label("User name").fill(f"nobody-{uuid.uuid4().hex[:6]}")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("sign-in-error")).to_have_text("Wrong user name or password.")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in-user")).to_have_text(user)
    expect(page).to_have_url(base + "/")  # the code and state are gone from the address
    # The token came from the code exchange with the PKCE verifier, from nowhere else.
    exchanges = [r for r in requests if r.url == f"{base}/auth/token"]
    assert len(exchanges) == 1 and "grant_type=authorization_code" in exchanges[0].post_data
    assert re.search(r"code_verifier=[\w.~-]{43,}", exchanges[0].post_data)
    authorizations = [r for r in requests if r.url.startswith(f"{base}/auth/authorize?")]
    assert authorizations and all("code_challenge_method=S256" in r.url for r in authorizations)
    kept = _kept_session(page)
    assert kept["profile"]["sub"] == user and kept["refresh_token"]

    # Create a group: the page opens it.
    page.get_by_label("Name", exact=True).fill(group_name)
    page.get_by_label("Description").fill("Pictures of <b>cats</b>")  # shown as text, not HTML
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("group-name-heading")).to_have_text(group_name)
    expect(page.locator("#group-description-text")).to_have_text("Pictures of <b>cats</b>")

    # Upload chelsea.jpg with the file picker.
    page.get_by_test_id("upload-file").set_input_files(str(chelsea_jpeg))
    expect(page.get_by_test_id("upload-chosen")).to_contain_text("chelsea.jpg")
    page.get_by_label("Caption").fill("Chelsea on the rug")
    page.get_by_role("button", name="Upload", exact=True).click()

    cards = page.get_by_test_id("image-card")
    expect(cards).to_have_count(1)
    card = cards.first
    # Without reloading, the worker's result arrives: the title becomes "<cat class> - 77.0%".
    expect(card.get_by_test_id("image-card-title")).to_have_text(CAT_TITLE, timeout=PROCESSING_TIMEOUT_MS)
    expect(card.get_by_test_id("image-card-status")).to_have_text("Done")
    title = card.get_by_test_id("image-card-title").text_content()
    image_id = card.get_attribute("data-id")

    # The card now shows the processed picture: the worker's 1000 px wide rendering.
    thumb = card.locator("img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())
    assert thumb.evaluate("img => img.naturalWidth") == 1000
    screenshot(page, "group-with-processed-image")

    # Open it: 5 predictions with bars, descending, the first one being the title's class.
    card.get_by_role("link").click()
    dialog = page.get_by_test_id("image-dialog")
    expect(dialog).to_be_visible()
    expect(page).to_have_url(re.compile(f"#/images/{image_id}$"))
    expect(dialog.get_by_test_id("image-dialog-title")).to_have_text(title)
    expect(dialog.get_by_test_id("image-dialog-caption")).to_have_text("Chelsea on the rug")
    predictions = dialog.get_by_test_id("prediction")
    expect(predictions).to_have_count(5)
    labels = [p.locator(".label").text_content() for p in predictions.all()]
    percents = [float(p.locator(".percent").text_content().rstrip("%")) for p in predictions.all()]
    widths = [p.locator(".bar > span").evaluate("el => el.getBoundingClientRect().width") for p in predictions.all()]
    assert title.startswith(labels[0] + " - ")
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.05
    assert widths[0] > 0 and widths == sorted(widths, reverse=True)
    expect(dialog.get_by_test_id("image-model-version")).not_to_be_empty()
    screenshot(page, "image-dialog")

    # The image's address opens it directly (a shared link), over its group.
    page.reload()
    expect(dialog).to_be_visible()
    expect(dialog.get_by_test_id("image-dialog-title")).to_have_text(title)
    expect(predictions).to_have_count(5)
    expect(page.get_by_test_id("group-name-heading")).to_have_text(group_name)

    # Reprocess it (the owner may): queued again, and done again with a cat class.
    dialog.get_by_role("button", name="Reprocess").click()
    expect(dialog.get_by_test_id("dialog-messages")).to_contain_text("Queued for processing again")
    expect(dialog.get_by_test_id("image-dialog-status")).to_have_text("Done", timeout=PROCESSING_TIMEOUT_MS)
    expect(dialog.get_by_test_id("image-dialog-title")).to_have_text(CAT_TITLE)

    # Escape closes the dialog (keyboard), back at the group's address.
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page).to_have_url(re.compile(r"#/groups/[0-9a-f]{32}$"))  # set by the dialog's (async) close event
    # ... and the keyboard focus is back on the card that opened it; Enter opens it again.
    expect(card.get_by_role("link")).to_be_focused()  # (restored by the dialog's "close" event)
    page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    page.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()

    # Delete it (after confirming): gone from the page, and from the API.
    card.get_by_role("link").click()
    expect(dialog).to_be_visible()
    page.once("dialog", lambda confirm: confirm.accept())
    dialog.get_by_role("button", name="Delete image").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_test_id("image-card")).to_have_count(0)
    expect(page.get_by_test_id("info-message").last).to_contain_text("deleted")
    gone = local_stack.graphql("query($id: ID!) { image(id: $id) { id } }", {"id": image_id})
    assert gone["image"] is None
    page.reload()
    expect(page.get_by_test_id("group-name-heading")).to_have_text(group_name)
    expect(page.get_by_test_id("image-card")).to_have_count(0)
    screenshot(page, "after-delete")

    # Sign out: back on the same view, signed out, and the session ended at the provider too.
    refresh_token = _kept_session(page)["refresh_token"]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_test_id("sign-in-button")).to_be_visible()
    expect(page.get_by_test_id("info-message").last).to_contain_text("Signed out")
    expect(page.get_by_test_id("group-name-heading")).to_have_text(group_name)
    expect(page.get_by_test_id("upload-form")).to_be_hidden()
    assert page.evaluate("() => Object.keys(localStorage).filter((key) => key.startsWith('oidc.user:'))") == []
    renewed = httpx.post(f"{base}/auth/token", timeout=30, data={
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": local_stack.settings.auth_client_id})
    assert renewed.json()["error"] == "invalid_grant"
    assert not [r.url for r in requests if "/auth/local/" in r.url]  # no password-less sign-in anywhere


def test_search_by_label_from_the_search_box(local_stack, account, page: Page, chelsea_jpeg: Path, screenshot):
    """Upload the cat photo; once processed, its top label is suggested while typing in the search
    box; the results show it newest first with the model's confidence; a minimum confidence above
    it hides it; a label below the confidence threshold does not find it; a result opens."""
    base = _base_url(local_stack)
    page.goto(base + "/")
    user = account(f"sam-{uuid.uuid4().hex[:6]}")
    _sign_in(page, user)
    expect(page.get_by_test_id("signed-in-user")).to_have_text(user)
    page.get_by_label("Name", exact=True).fill(f"Search {uuid.uuid4().hex[:6]}")
    page.get_by_role("button", name="Create group").click()
    page.get_by_test_id("upload-file").set_input_files(str(chelsea_jpeg))
    page.get_by_role("button", name="Upload", exact=True).click()
    card = page.get_by_test_id("image-card").first
    expect(card.get_by_test_id("image-card-title")).to_have_text(CAT_TITLE, timeout=PROCESSING_TIMEOUT_MS)
    image_id = card.get_attribute("data-id")
    predictions = local_stack.graphql(
        "query($id: ID!) { image(id: $id) { predictions { label probability } } }", {"id": image_id}
    )["image"]["predictions"]
    top = predictions[0]
    threshold = local_stack.settings.confidence_threshold
    weak = [p for p in predictions if p["probability"] < threshold]
    assert top["probability"] >= threshold and weak, predictions  # chelsea: one sure class, some unsure

    # Typing the start of the label suggests it (with how many images carry it).
    box = page.get_by_role("combobox", name="Search images by label")
    box.press_sequentially(top["label"][:3].lower(), delay=50)
    suggestions = page.get_by_test_id("search-suggestion")
    ours = suggestions.filter(has_text=top["label"])
    expect(ours).to_have_count(1, timeout=UI_TIMEOUT_MS)
    assert int(ours.locator(".count").text_content()) >= 1
    box.press("ArrowDown")  # the keyboard walks the suggestions
    expect(suggestions.first).to_have_attribute("aria-selected", "true")
    expect(box).to_have_attribute("aria-activedescendant", suggestions.first.get_attribute("id"))
    screenshot(page, "search-suggestions")
    ours.click()

    expect(page).to_have_url(re.compile(r"#/search/[^?]+$"))
    expect(page.get_by_test_id("search-heading")).to_have_text(f"Images labelled “{top['label']}”")
    result = page.locator(f'#search-results li[data-id="{image_id}"]')
    expect(result).to_be_visible()
    expect(result.get_by_test_id("search-match")).to_have_text(
        f"{top['label']}: {top['probability'] * 100:.1f}%")
    assert page.get_by_test_id("search-results").get_by_test_id("image-card").first.get_attribute("data-id") == image_id
    screenshot(page, "search-results")

    # A minimum confidence above the label's probability leaves the image out.
    above = next(v for v in (30, 50, 70, 90) if v / 100 > top["probability"])
    page.get_by_test_id("search-min").select_option(str(above))
    expect(page).to_have_url(re.compile(rf"\?min={above}$"))
    expect(result).to_have_count(0)
    page.get_by_test_id("search-min").select_option("0")
    expect(result).to_be_visible()

    # A label the model was unsure of is not searchable (typed and submitted with Enter).
    box.fill(weak[0]["label"])
    box.press("Enter")
    expect(page.get_by_test_id("search-heading")).to_have_text(f"Images labelled “{weak[0]['label']}”")
    expect(page.get_by_test_id("search-meta")).not_to_be_empty()
    expect(page.locator(f'#search-results li[data-id="{image_id}"]')).to_have_count(0)

    # Back to the results, and a result opens in the image dialog.
    page.go_back()
    expect(result).to_be_visible()
    result.get_by_role("link").click()
    expect(page.get_by_test_id("image-dialog")).to_be_visible()
    expect(page.get_by_test_id("prediction")).to_have_count(5)


# Appends an element the way an injection would, and reports what the policy made of it.
_INJECT = """(kind) => new Promise((resolve) => {
    const probe = kind === "script" ? document.createElement("script") : document.createElement("p");
    document.addEventListener("securitypolicyviolation", (e) => resolve({
        directive: e.effectiveDirective, blocked: e.blockedURI,
        applied: kind === "script" ? window.injected === true : getComputedStyle(probe).color === "rgb(255, 0, 0)",
    }), {once: true});
    if (kind === "script") probe.textContent = "window.injected = true";
    else probe.setAttribute("style", "color: rgb(255, 0, 0)");
    document.body.append(probe);
})"""


def test_security_headers_and_an_enforced_content_security_policy(local_stack, browser: Browser):
    """The page and its files carry the security headers; the policy lets the page's own modules run
    (the other tests find no violation during their flows) and blocks an injected inline script,
    an inline style and framing; GraphiQL has its own policy, under which its inline script runs."""
    base = _base_url(local_stack)
    s3 = "{0.scheme}://{0.netloc}".format(urlsplit(local_stack.settings.s3_endpoint_url))
    context = browser.new_context()
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page = context.new_page()
        violations = _record_csp_violations(page)
        responses = []
        page.on("response", lambda response: responses.append(response))
        with page.expect_response(lambda response: response.url == base + "/graphql"):  # the groups query
            page.goto(base + "/")
        expect(page.get_by_role("heading", name="Groups", level=1)).to_be_visible()  # shown by the modules
        expect(page.get_by_test_id("sign-in-button")).to_be_visible()

        # connect-src: the API's websocket under either local name and the stack's second page
        # origin (live updates), and the sign-in issuer (here the API itself: its public_url's origin)
        page_origins = [base, base.replace("http://127.0.0.1:", "http://localhost:"),
                        *local_stack.settings.extra_page_origins]
        websockets = " ".join(origin.replace("http://", "ws://") for origin in page_origins)
        policy = (
            f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' {s3} data: blob:; "
            f"connect-src 'self' {websockets} {s3} {base}; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
            "object-src 'none'"
        )
        own = {r.url.removeprefix(base): r.all_headers() for r in responses if r.url.startswith(base + "/")}
        assert {"/", "/styles.css", "/js/main.js", "/js/auth.js", "/graphql"} <= set(own), sorted(own)
        for path, headers in own.items():
            assert headers.get("content-security-policy") == policy, path
            assert headers.get("x-content-type-options") == "nosniff", path
            assert headers.get("referrer-policy") == "no-referrer", path
            assert headers.get("x-frame-options") == "DENY", path
            assert headers.get("cross-origin-opener-policy") == "same-origin", path
        assert not violations, violations

        # Injected inline code is blocked, and the browser says so (what the other tests watch for).
        assert page.evaluate(_INJECT, "script") == {"directive": "script-src-elem", "blocked": "inline",
                                                    "applied": False}
        assert page.evaluate(_INJECT, "style") == {"directive": "style-src-attr", "blocked": "inline", "applied": False}
        assert any("Content Security Policy" in v and "inline script" in v for v in violations), violations
        assert "event: script-src-elem blocked inline" in violations

        # No page, not even one of the same origin, may show it in a frame.
        framer = context.new_page()
        framer_console: list[str] = []
        framer.on("console", lambda message: framer_console.append(message.text))
        framer.set_content(f'<iframe src="{base}/"></iframe>')
        deadline = time.monotonic() + 10
        while not any("frame-ancestors 'none'" in m for m in framer_console) and time.monotonic() < deadline:
            framer.wait_for_timeout(100)
        assert any("frame-ancestors 'none'" in m for m in framer_console), framer_console
        assert framer.frames[1].url != f"{base}/"  # Chromium shows its error page instead

        # GraphiQL (local mode): its own policy; its inline script runs (allowed by hash). The CDN is
        # cut off so that the check is the same with or without internet.
        ide = context.new_page()
        ide_violations = _record_csp_violations(ide)
        ide.route("https://unpkg.com/**", lambda route: route.abort())
        ide_policy = ide.goto(base + "/graphql").all_headers()["content-security-policy"]
        script_src = next(d for d in ide_policy.split("; ") if d.startswith("script-src "))
        assert "'sha256-" in script_src and "'unsafe-inline'" not in script_src, ide_policy
        assert ide.evaluate("typeof updateURL") == "function"  # declared by GraphiQL's inline script
        assert not ide_violations, ide_violations
    finally:
        context.close()


def test_anonymous_visitor_sees_groups_but_no_upload_or_create(local_stack, page: Page, screenshot):
    base = _base_url(local_stack)
    token = local_stack.token("bob")
    name = f"Bob's dogs {uuid.uuid4().hex[:6]}"
    created = local_stack.graphql(
        'mutation($n: String!) { createGroup(input: {name: $n, description: "walks"}) {'
        " ... on Group { id } ... on Error { code message } } }",
        {"n": name},
        token,
    )["createGroup"]
    assert "id" in created, created

    page.goto(base + "/")
    card = page.get_by_test_id("group-card").filter(has_text=name)
    expect(card).to_be_visible()
    expect(page.get_by_test_id("sign-in-button")).to_be_visible()
    expect(page.get_by_test_id("sign-in-hint")).to_be_visible()
    expect(page.get_by_role("button", name="Create group")).to_have_count(0)
    expect(page.get_by_test_id("create-group-form")).to_be_hidden()

    card.get_by_role("link").click()
    expect(page.get_by_test_id("group-name-heading")).to_have_text(name)
    expect(page.get_by_text("No images in this group yet.")).to_be_visible()
    expect(page.get_by_test_id("upload-form")).to_be_hidden()
    expect(page.get_by_role("button", name="Upload", exact=True)).to_have_count(0)
    expect(page.get_by_role("button", name="Delete group")).to_have_count(0)
    screenshot(page, "anonymous-group")


def _drop_file(page: Page, path: Path, mime: str) -> None:
    """Drag and drop a file on the drop zone (the events a real drop fires, with its DataTransfer)."""
    page.evaluate(
        """async ({bytes, name, mime}) => {
            const file = new File([new Uint8Array(bytes)], name, {type: mime});
            const transfer = new DataTransfer();
            transfer.items.add(file);
            const zone = document.querySelector('[data-testid="dropzone"]');
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
            }
        }""",
        {"bytes": list(path.read_bytes()), "name": path.name, "mime": mime},
    )


def test_phone_layout_client_side_checks_and_drag_and_drop(
    local_stack, account, browser: Browser, tmp_path: Path, screenshot
):
    """On a phone-sized screen: a file that is not an image is refused before anything is sent;
    an image dropped on the drop zone is uploaded and processed; nothing is wider than the screen."""
    base = _base_url(local_stack)
    with checked_page(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True) as page:
        page.goto(base + "/")
        _sign_in(page, account("carol"))
        page.get_by_label("Name", exact=True).fill(f"Phone {uuid.uuid4().hex[:6]}")
        page.get_by_role("button", name="Create group").click()
        expect(page.get_by_test_id("upload-form")).to_be_visible()

        sent: list[str] = []
        page.on("request", lambda r: sent.append(r.post_data or "") if r.method == "POST" else None)
        notes = tmp_path / "notes.txt"
        notes.write_text("not a picture")
        page.get_by_test_id("upload-file").set_input_files(str(notes))
        expect(page.get_by_test_id("error-message").last).to_contain_text("not a supported image")
        expect(page.get_by_role("button", name="Upload", exact=True)).to_be_disabled()
        assert not any("createImage" in body for body in sent)

        # Drag and drop a PNG: it is uploaded and processed like a picked file.
        from PIL import Image
        from skimage import data as skdata

        png = tmp_path / "rocket.png"
        Image.fromarray(skdata.rocket()).save(png)
        _drop_file(page, png, "image/png")
        expect(page.get_by_test_id("upload-chosen")).to_contain_text("rocket.png")
        page.get_by_role("button", name="Upload", exact=True).click()
        card = page.get_by_test_id("image-card")
        expect(card).to_have_count(1)
        expect(card.get_by_test_id("image-card-status")).to_have_text("Done", timeout=PROCESSING_TIMEOUT_MS)
        expect(card.get_by_test_id("image-card-title")).to_have_text(re.compile(r".+ - \d{1,3}\.\d%$"))
        assert any("createImage" in body and "image/png" in body for body in sent)

        # Nothing is wider than the phone's screen.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, "phone-group")


def test_group_images_newest_first_with_load_more(local_stack, page: Page):
    """13 images (records only, never uploaded) show newest first, 12 per page, then "load more"."""
    base = _base_url(local_stack)
    token = local_stack.token("dora")
    group = local_stack.graphql(
        "mutation($n: String!) { createGroup(input: {name: $n}) { ... on Group { id } ... on Error { message } } }",
        {"n": f"Many {uuid.uuid4().hex[:6]}"},
        token,
    )["createGroup"]
    for i in range(13):
        created = local_stack.graphql(
            "mutation($g: ID!, $c: String!) { createImage(input: {groupId: $g, caption: $c,"
            ' contentType: "image/jpeg", contentLength: 1000}) { __typename ... on Error { message } } }',
            {"g": group["id"], "c": f"photo {i}"},
            token,
        )["createImage"]
        assert created["__typename"] == "ImageUpload", created

    page.goto(f"{base}/#/groups/{group['id']}")
    cards = page.get_by_test_id("image-card")
    expect(cards).to_have_count(12)
    expect(cards.first.get_by_test_id("image-card-title")).to_have_text("photo 12")
    expect(cards.first.get_by_test_id("image-card-status")).to_have_text("Awaiting upload")
    page.get_by_role("button", name="Load more images").click()
    expect(cards).to_have_count(13)
    expect(cards.last.get_by_test_id("image-card-title")).to_have_text("photo 0")
    expect(page.get_by_role("button", name="Load more images")).to_be_hidden()


def test_errors_are_shown_and_a_refused_upload_leaves_nothing(
    local_stack, account, page: Page, chelsea_jpeg: Path, tmp_path: Path, screenshot
):
    """The API unreachable, the storage server refusing an upload (as S3 does when a presigned
    POST has expired), and a file the worker cannot read: each gives a clear message; the refused
    image's record is removed again; the failed one can be retried from its card."""
    base = _base_url(local_stack)
    page.goto(base + "/")
    _sign_in(page, account("ivan"))
    expect(page.get_by_test_id("signed-in-user")).to_have_text("ivan")

    # The API cannot be reached: a network error message, and the form keeps what was typed.
    page.route("**/graphql", lambda route: route.abort("connectionrefused"))
    page.get_by_label("Name", exact=True).fill("Unlucky")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("error-message").last).to_contain_text("Cannot reach the server")
    expect(page.get_by_label("Name", exact=True)).to_have_value("Unlucky")
    page.unroute("**/graphql")

    # A success status with an answer that is not GraphQL (cut short by a proxy): said so, not
    # "The server answered 200 OK", which reads like success.
    page.route("**/graphql", lambda route: route.fulfill(status=200, body='{"data": {"createGr',
                                                         content_type="application/json"))
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("error-message").last).to_contain_text("answer could not be read")
    expect(page.get_by_test_id("error-message").last).not_to_contain_text("200")
    page.unroute("**/graphql")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("group-name-heading")).to_have_text("Unlucky")
    group_id = page.url.rsplit("/", 1)[-1]

    # The storage server refuses the upload with S3's XML error.
    refusal = (
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
        "<Message>Request has expired</Message></Error>"
    )
    storage = re.compile(rf"^(?!{re.escape(base)}).*")  # every POST that is not to the API
    page.route(
        storage,
        lambda route: route.fulfill(status=403, body=refusal, content_type="application/xml",
                                    headers={"Access-Control-Allow-Origin": "*"})
        if route.request.method == "POST" else route.continue_(),
    )
    page.get_by_test_id("upload-file").set_input_files(str(chelsea_jpeg))
    page.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_test_id("error-message").last).to_contain_text("Upload failed")
    expect(page.get_by_test_id("error-message").last).to_contain_text("refused the upload")
    expect(page.get_by_test_id("image-card")).to_have_count(0)

    def group_now() -> dict:
        query = "query($id: ID!) { group(id: $id) { imageCount images { edges { node { id } } } } }"
        return local_stack.graphql(query, {"id": group_id})["group"]

    deadline = time.monotonic() + 30
    while group_now()["images"]["edges"] and time.monotonic() < deadline:  # the page cleans up in the background
        time.sleep(0.5)
    assert group_now() == {"imageCount": 0, "images": {"edges": []}}

    # A file that is not an image but claims to be one passes the page's checks (type by name) and
    # fails in the worker: the card shows FAILED with the reason, and offers a retry to its owner.
    page.unroute(storage)
    fake = tmp_path / "holiday.jpg"
    fake.write_bytes(b"this is not a JPEG at all" * 40)
    page.get_by_test_id("upload-file").set_input_files(str(fake))
    page.get_by_role("button", name="Upload", exact=True).click()
    card = page.get_by_test_id("image-card")
    expect(card.get_by_test_id("image-card-status")).to_have_text("Failed", timeout=PROCESSING_TIMEOUT_MS)
    expect(card.get_by_test_id("image-card-error")).not_to_be_empty()
    expect(card.get_by_test_id("image-card-title")).to_have_text("holiday.jpg")
    screenshot(page, "image-card-with-worker-error")
    card.get_by_role("button", name="Retry holiday.jpg").click()
    expect(page.get_by_test_id("info-message").last).to_contain_text("Queued for processing again")
    expect(card.get_by_test_id("image-card-status")).to_have_text("Failed", timeout=PROCESSING_TIMEOUT_MS)


def test_groups_newest_first_with_load_more(local_stack, page: Page):
    """Groups show newest first, 12 per page; "Load more groups" brings the rest, without repeats."""
    base = _base_url(local_stack)
    token = local_stack.token("emil")
    tag = uuid.uuid4().hex[:6]
    for i in range(13):
        local_stack.graphql(
            "mutation($n: String!) { createGroup(input: {name: $n}) { ... on Group { id } } }",
            {"n": f"Batch {tag} #{i:02d}"},
            token,
        )

    page.goto(base + "/")
    cards = page.get_by_test_id("group-card")
    expect(cards).to_have_count(12)
    # The newest 12 of them, newest first (other tests' groups are older).
    names = [c.get_by_test_id("group-card-name").text_content() for c in cards.all()]
    assert names == [f"Batch {tag} #{i:02d}" for i in range(12, 0, -1)]
    more = page.get_by_role("button", name="Load more groups")
    while more.is_visible():
        count = cards.count()
        more.click()
        expect(cards).not_to_have_count(count)
    all_names = [c.get_by_test_id("group-card-name").text_content() for c in cards.all()]
    assert f"Batch {tag} #00" in all_names
    ids = [c.get_attribute("data-id") for c in cards.all()]
    assert len(ids) == len(set(ids)) >= 13


# --- live updates and the admin view ------------------------------------------------------------


class _Traffic:
    """What a page says to the API: the GraphQL documents it POSTs and the websocket frames."""

    def __init__(self, page: Page, base: str) -> None:
        self.posted: list[str] = []
        self.frames: list[str] = []  # received over the API's websocket
        self.sockets = 0
        page.on("request", lambda r: self.posted.append(r.post_data or "")
                if r.url == base + "/graphql" and r.method == "POST" else None)
        page.on("websocket", self._socket)

    def _socket(self, ws) -> None:
        self.sockets += 1
        ws.on("framereceived", lambda payload: self.frames.append(payload if isinstance(payload, str) else ""))

    def polls(self) -> list[str]:
        return [body for body in self.posted if "query Poll(" in body]

    def live_done(self, image_id: str) -> bool:
        for frame in self.frames:
            message = json.loads(frame)
            if message.get("type") != "next":
                continue
            payload = (message.get("payload") or {}).get("data") or {}
            update = payload.get("imageUpdated") or (payload.get("groupImagesUpdated") or {}).get("image") or {}
            if update.get("id") == image_id and update.get("status") == "DONE":
                return True
        return False


def _new_group(page: Page, name: str) -> str:
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("group-name-heading")).to_have_text(name)
    return page.url.rsplit("/", 1)[-1]


def _upload(page: Page, path: Path) -> None:
    page.get_by_test_id("upload-file").set_input_files(str(path))
    page.get_by_role("button", name="Upload", exact=True).click()


def test_results_arrive_over_the_websocket_without_polling(local_stack, account, page: Page, chelsea_jpeg: Path,
                                                           screenshot):
    """The worker's result reaches the page as a subscription message: no poll query is sent. An
    image another user adds to the group appears without a reload."""
    base = _base_url(local_stack)
    traffic = _Traffic(page, base)
    page.goto(base + "/")
    _sign_in(page, account("lena"))
    expect(page.get_by_test_id("signed-in-user")).to_have_text("lena")
    group_id = _new_group(page, f"Live {uuid.uuid4().hex[:6]}")
    _upload(page, chelsea_jpeg)
    card = page.get_by_test_id("image-card").first
    expect(card.get_by_test_id("image-card-title")).to_have_text(CAT_TITLE, timeout=PROCESSING_TIMEOUT_MS)
    image_id = card.get_attribute("data-id")
    assert traffic.live_done(image_id), traffic.frames[-5:]  # the result came over the websocket
    assert traffic.polls() == []  # and nothing was polled

    # Someone else adds an image to the group: it shows up on its own.
    created = local_stack.graphql(
        'mutation($g: ID!) { createImage(input: {groupId: $g, caption: "from mia", contentType: "image/jpeg",'
        " contentLength: 1000}) { ... on ImageUpload { image { id } } } }",
        {"g": group_id}, local_stack.token("mia"))["createImage"]["image"]
    other = page.locator(f'[data-testid="image-card"][data-id="{created["id"]}"]')
    expect(other.get_by_test_id("image-card-title")).to_have_text("from mia")
    expect(page.get_by_test_id("image-card")).to_have_count(2)
    expect(page.locator("#group-meta")).to_contain_text("2 images")
    assert traffic.polls() == []
    screenshot(page, "live-update")


def test_polling_takes_over_while_the_websocket_is_down(local_stack, account, page: Page, chelsea_jpeg: Path):
    """The websocket refused: the page polls and still shows the result; once the socket can
    connect again, results come over it again."""
    base = _base_url(local_stack)
    traffic = _Traffic(page, base)
    blocked = {"on": True}

    def socket_route(ws) -> None:
        if blocked["on"]:
            ws.close()
        else:
            ws.connect_to_server()

    page.route_web_socket(re.compile(r".*/graphql$"), socket_route)
    page.goto(base + "/")
    _sign_in(page, account("nora"))
    expect(page.get_by_test_id("signed-in-user")).to_have_text("nora")
    _new_group(page, f"Offline {uuid.uuid4().hex[:6]}")
    _upload(page, chelsea_jpeg)
    card = page.get_by_test_id("image-card").first
    expect(card.get_by_test_id("image-card-title")).to_have_text(CAT_TITLE, timeout=PROCESSING_TIMEOUT_MS)
    assert traffic.polls(), "the page should have polled while the websocket was down"
    assert not any(json.loads(f).get("type") == "next" for f in traffic.frames)

    blocked["on"] = False  # the socket comes back (the page retries with back-off, up to 30 s)
    deadline = time.monotonic() + 45
    while not any(json.loads(f).get("type") == "connection_ack" for f in traffic.frames):
        assert time.monotonic() < deadline, "the page did not reconnect"
        page.wait_for_timeout(250)
    _upload(page, chelsea_jpeg)
    expect(page.get_by_test_id("image-card")).to_have_count(2)
    newest = page.get_by_test_id("image-card").first
    expect(newest.get_by_test_id("image-card-title")).to_have_text(CAT_TITLE, timeout=PROCESSING_TIMEOUT_MS)
    assert traffic.live_done(newest.get_attribute("data-id")), traffic.frames[-5:]


def _post_file(upload: dict, body: bytes) -> None:
    response = httpx.post(upload["url"], data=upload["fields"], files={"file": ("x.jpg", body, "image/jpeg")},
                          timeout=30)
    assert response.status_code < 300, response.text


def test_admin_sees_counts_retries_a_failed_image_and_retries_all(local_stack, account, page: Page,
                                                                     chelsea_jpeg: Path, screenshot):
    """An admin (an account with the admin role, `udagram user add --admin`) gets the admin view:
    counts by status, the failed images with their reason; "Retry" re-runs one (it ends DONE and
    leaves the list), "Retry all failed" shows its progress to the end. Others do not see it."""
    from udagram import data

    base = _base_url(local_stack)
    admin = f"root-{uuid.uuid4().hex[:6]}"
    local_stack.add_account(admin, PASSWORD, admin=True)  # before olga's: the first account is an admin
    owner = local_stack.token(account("olga"))
    group_id = local_stack.graphql('mutation { createGroup(input: {name: "For the admin"}) { ... on Group { id } } }',
                                   token=owner)["createGroup"]["id"]
    create = ("mutation($g: ID!, $c: String!, $n: Int!) { createImage(input: {groupId: $g, caption: $c,"
              ' contentType: "image/jpeg", contentLength: $n})'
              " { ... on ImageUpload { image { id } upload { url fields } } } }")
    garbage = b"not a picture at all " * 20
    made = {}
    for caption, body in (("good one", chelsea_jpeg.read_bytes()), ("bad one", garbage)):
        result = local_stack.graphql(create, {"g": group_id, "c": caption, "n": len(body)}, owner)["createImage"]
        _post_file(result["upload"], body)
        made[caption] = result["image"]["id"]
    status = "query($id: ID!) { image(id: $id) { status } }"
    deadline = time.monotonic() + PROCESSING_TIMEOUT_MS / 1000
    while {local_stack.graphql(status, {"id": i})["image"]["status"] for i in made.values()} != {"DONE", "FAILED"}:
        assert time.monotonic() < deadline, "the uploads were not processed"
        time.sleep(0.5)
    # The good one as if TorchServe had been down when it was processed.
    data.configure(local_stack.settings)
    data.ImageModel(made["good one"]).update(actions=[
        data.ImageModel.status.set("FAILED"), data.ImageModel.status_changed_at.set(data.sortable_time()),
        data.ImageModel.error.set("the model server was unreachable")])

    # Not an admin: no link, and the address says no.
    page.goto(base + "/")
    _sign_in(page, "olga")
    expect(page.get_by_test_id("signed-in-user")).to_have_text("olga")
    expect(page.get_by_role("heading", name="Groups", level=1)).to_be_visible()
    expect(page.get_by_test_id("admin-link")).to_be_hidden()
    page.goto(base + "/#/admin")
    expect(page.get_by_test_id("admin-denied")).to_be_visible()
    expect(page.get_by_test_id("admin-counts")).to_be_hidden()

    # The admin, signed in at the same login form.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_test_id("sign-in-button")).to_be_visible()
    page.goto(base + "/")
    _sign_in(page, admin)
    expect(page.get_by_test_id("signed-in-user")).to_have_text(admin)
    page.get_by_test_id("admin-link").click()
    expect(page.get_by_role("heading", name="Admin", level=1)).to_be_visible()
    counts = page.get_by_test_id("admin-count")
    expect(counts).to_have_count(4)
    failed_count = page.locator('[data-testid="admin-count"][data-status="FAILED"] strong')
    failed_before = int(failed_count.text_content())
    assert failed_before >= 2
    expect(page.get_by_test_id("admin-model")).to_contain_text("Current model version: 1.0")
    item = page.locator(f'[data-testid="admin-failed-item"][data-id="{made["good one"]}"]')
    expect(item.get_by_test_id("admin-failed-error")).to_have_text("the model server was unreachable")
    bad = page.locator(f'[data-testid="admin-failed-item"][data-id="{made["bad one"]}"]')
    expect(bad.get_by_test_id("admin-failed-error")).not_to_be_empty()
    screenshot(page, "admin-view")

    item.get_by_role("button", name=re.compile(r"^Retry ")).click()
    expect(page.get_by_test_id("info-message").last).to_contain_text("Queued for processing again")
    expect(item).to_have_count(0, timeout=PROCESSING_TIMEOUT_MS)  # DONE: off the list
    expect(failed_count).to_have_text(str(failed_before - 1), timeout=PROCESSING_TIMEOUT_MS)
    assert local_stack.graphql(status, {"id": made["good one"]})["image"]["status"] == "DONE"

    page.get_by_test_id("admin-retry-failed").click()
    expect(page.get_by_test_id("admin-job")).to_be_visible()
    expect(page.get_by_test_id("admin-job-text")).to_contain_text("done", timeout=3 * PROCESSING_TIMEOUT_MS)
    expect(page.get_by_test_id("admin-job-progress")).to_have_attribute("value", "100")
    expect(bad.get_by_test_id("admin-failed-error")).not_to_be_empty()  # still failing: not an image
    screenshot(page, "admin-retry-all-done")

    page.get_by_test_id("admin-rerun-older").click()  # everything is made by the current version
    expect(page.get_by_test_id("info-message").last).to_contain_text("Nothing to re-run")
# --- the production path: any OpenID provider, by configuration only ------------------------------


@dataclass(frozen=True)
class ProductionApi:
    url: str
    issuer: str
    user: str


@pytest.fixture(scope="module")
def production_api(local_stack, iam_server, tmp_path_factory) -> Iterator[ProductionApi]:
    """An `udagram api` of the running stack configured as production is, by settings alone: its
    users sign in at an independent OpenID provider, Canaille (run by pytest-iam on a free port,
    in this process), whose access tokens are RS256 JWTs with `aud` = the client's id, `sub` = the
    user name and the user's groups in a `groups` claim (the role claim here)."""
    issuer = iam_server.url.rstrip("/")  # Canaille's issuer has no trailing slash: it must match exactly
    client_id = "udagram-web-spa"
    log = tmp_path_factory.mktemp("production-api") / "api.log"
    with local_stack.extra_api(log, page=True, UDAGRAM_AUTH_ISSUER=issuer, UDAGRAM_AUTH_AUDIENCE=client_id,
                               UDAGRAM_AUTH_CLIENT_ID=client_id, UDAGRAM_AUTH_SCOPES="openid profile groups",
                               UDAGRAM_AUTH_ROLE_CLAIM="groups", UDAGRAM_CREATE_RESOURCES="false") as url:
        with iam_server.app.app_context():
            # A public client with PKCE, as one registers the page at Auth0, Keycloak or Cognito.
            # client_uri: Canaille answers CORS for its origin and skips its consent screen for 127.0.0.1.
            client = iam_server.models.Client(
                client_id=client_id, client_name="Udagram", client_uri=url, redirect_uris=[f"{url}/"],
                post_logout_redirect_uris=[f"{url}/"], grant_types=["authorization_code", "refresh_token"],
                response_types=["code"], token_endpoint_auth_method="none", scope=["openid", "profile", "groups"])
            iam_server.backend.save(client)
            client.audience = [client]
            iam_server.backend.save(client)
        user = iam_server.random_user(user_name="grace", display_name="grace", password=PASSWORD)
        iam_server.random_group(display_name="admin", members=[user])
        # Uploads from this page's origin: it is the stack's second page origin (extra_page_origins)
        try:
            yield ProductionApi(url=url, issuer=issuer, user="grace")
        finally:
            os.environ.pop("AUTHLIB_INSECURE_TRANSPORT", None)  # set by pytest-iam; the project never does


def test_production_sign_in_at_an_independent_provider(production_api, local_stack, page: Page,
                                                       chelsea_jpeg: Path, screenshot):
    """The same flow as locally, against Canaille: sign in at its login form, create a group,
    upload, see it processed, sign out; the API verified Canaille's tokens through its discovery
    document and read the role from its `groups` claim."""
    api, base = production_api, production_api.url
    requests: list = []
    page.on("request", lambda request: requests.append(request))
    page.goto(base + "/")
    assert page.evaluate("() => fetch('/auth/config').then((r) => r.json())")["issuer"] == api.issuer

    page.get_by_test_id("sign-in-button").click()
    page.wait_for_url(re.compile("^" + re.escape(api.issuer) + "/"))
    page.locator("input[name=login]").fill(api.user)
    page.get_by_role("button", name="Continue").click()
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("input[name=password]").press("Enter")
    expect(page.get_by_test_id("signed-in-user")).to_have_text(api.user)
    kept = _kept_session(page)
    claims = jwt.decode(kept["access_token"], options={"verify_signature": False})
    assert claims["iss"] == api.issuer and claims["aud"] == ["udagram-web-spa"] and claims["sub"] == api.user
    me = page.evaluate("""(token) => fetch('/graphql', {method: 'POST', headers: {'Content-Type': 'application/json',
        Authorization: `Bearer ${token}`}, body: JSON.stringify({query: '{ me { id roles } }'})})
        .then((r) => r.json())""",
                       kept["access_token"])
    assert me == {"data": {"me": {"id": api.user, "roles": ["admin"]}}}
    # the code went to Canaille's token endpoint with the PKCE verifier
    exchanges = [r for r in requests if r.url.startswith(api.issuer) and r.method == "POST" and "/token" in r.url]
    assert exchanges and "code_verifier=" in exchanges[0].post_data

    group_name = f"Production {uuid.uuid4().hex[:6]}"
    page.get_by_label("Name", exact=True).fill(group_name)
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("group-name-heading")).to_have_text(group_name)
    page.get_by_test_id("upload-file").set_input_files(str(chelsea_jpeg))
    page.get_by_role("button", name="Upload", exact=True).click()
    card = page.get_by_test_id("image-card")
    expect(card.get_by_test_id("image-card-title")).to_have_text(CAT_TITLE, timeout=PROCESSING_TIMEOUT_MS)
    screenshot(page, "production-issuer-group")
    owner = local_stack.graphql("query($id: ID!) { image(id: $id) { owner } }", {"id": card.get_attribute("data-id")})
    assert owner == {"image": {"owner": api.user}}

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_test_id("sign-in-button")).to_be_visible()
    expect(page.get_by_test_id("group-name-heading")).to_have_text(group_name)
    assert page.url.startswith(base + "/")
    assert not [r.url for r in requests if "/auth/local/" in r.url]


def test_an_unreachable_issuer_gets_a_clear_message(production_api, page: Page):
    """The sign-in service down (its discovery document cannot be fetched): the page says so and
    stays usable."""
    page.route(re.compile("^" + re.escape(production_api.issuer) + "/"), lambda route: route.abort("connectionrefused"))
    page.goto(production_api.url + "/")
    page.get_by_test_id("sign-in-button").click()
    # Any of the shown errors (not only the last): another may arrive meanwhile on a loaded machine.
    expect(page.get_by_test_id("error-message").filter(
        has_text=f"Cannot reach the sign-in service ({production_api.issuer})")).to_have_count(1)
    expect(page.get_by_test_id("sign-in-button")).to_be_enabled()
    expect(page.get_by_role("heading", name="Groups", level=1)).to_be_visible()
