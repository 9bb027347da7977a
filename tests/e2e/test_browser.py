"""The web page in a real browser (Debian's headless Chromium driven by Playwright) against the
real local stack (`local_stack`: S3/SQS/DynamoDB stand-ins, TorchServe, API and worker).

Screenshots are written to test-artifacts/ (gitignored); the run's summary lists their paths.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.e2e.conftest import failed

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
CAT_TITLE = re.compile(r"^(?:%s) - \d{1,3}\.\d%%$" % "|".join(re.escape(c) for c in CAT_CLASSES))

PROCESSING_TIMEOUT_MS = 120_000  # first inference on a busy 2-core machine can be slow
UI_TIMEOUT_MS = 20_000  # the machine is shared: generous waits for ordinary page updates
expect.set_options(timeout=UI_TIMEOUT_MS)


def _base_url(stack) -> str:
    return stack.api_url.rstrip("/")


def _record_csp_violations(page: Page) -> list[str]:
    """Every Content-Security-Policy violation on `page`, in whatever document it loads: the
    browser's console report and the page's `securitypolicyviolation` events."""
    found: list[str] = []
    page.on("console", lambda message: found.append(message.text) if "Content Security Policy" in message.text else None)
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


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, screenshot) -> Iterator[Page]:
    """A desktop-sized page; on failure its last state is saved as failed-<test>.png. Any JavaScript
    error or Content-Security-Policy violation on it fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    csp_violations = _record_csp_violations(page)
    try:
        yield page
        if failed(request):
            screenshot(page, f"failed-{request.node.name}")
    finally:
        context.close()
    assert not script_errors, f"JavaScript errors on the page: {script_errors}"
    assert not csp_violations, f"Content-Security-Policy violations on the page: {csp_violations}"


@pytest.fixture(scope="session")
def chelsea_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image
    from skimage import data as skdata

    path = tmp_path_factory.mktemp("images") / "chelsea.jpg"
    Image.fromarray(skdata.chelsea()).save(path, "JPEG", quality=92)
    return path


def _token(base: str, user: str) -> str:
    response = httpx.post(f"{base}/auth/local/token", json={"user": user}, timeout=30)
    response.raise_for_status()
    return response.json()["token"]


def test_sign_in_create_group_upload_watch_it_processed_and_delete(
    local_stack, page: Page, chelsea_jpeg: Path, screenshot
):
    base = _base_url(local_stack)
    user = f"alice-{uuid.uuid4().hex[:6]}"
    group_name = f"Cats {uuid.uuid4().hex[:6]}"

    page.goto(base + "/")
    expect(page.get_by_role("heading", name="Groups", level=1)).to_be_visible()

    # Sign in with a user name (local mode).
    page.get_by_label("User name").fill(user)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in-user")).to_have_text(user)

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


def test_search_by_label_from_the_search_box(local_stack, page: Page, chelsea_jpeg: Path, screenshot):
    """Upload the cat photo; once processed, its top label is suggested while typing in the search
    box; the results show it newest first with the model's confidence; a minimum confidence above
    it hides it; a label below the confidence threshold does not find it; a result opens."""
    base = _base_url(local_stack)
    page.goto(base + "/")
    page.get_by_label("User name").fill(f"sam-{uuid.uuid4().hex[:6]}")
    page.get_by_role("button", name="Sign in").click()
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
        expect(page.get_by_test_id("sign-in-form")).to_be_visible()

        policy = (
            f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' {s3} data: blob:; "
            f"connect-src 'self' {s3}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
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
        assert page.evaluate(_INJECT, "script") == {"directive": "script-src-elem", "blocked": "inline", "applied": False}
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
    token = _token(base, "bob")
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
    expect(page.get_by_test_id("sign-in-form")).to_be_visible()
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
    local_stack, browser: Browser, tmp_path: Path, screenshot
):
    """On a phone-sized screen: a file that is not an image is refused before anything is sent;
    an image dropped on the drop zone is uploaded and processed; nothing is wider than the screen."""
    base = _base_url(local_stack)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.set_default_timeout(UI_TIMEOUT_MS)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    csp_violations = _record_csp_violations(page)
    try:
        page.goto(base + "/")
        page.get_by_label("User name").fill("carol")
        page.get_by_role("button", name="Sign in").click()
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
    finally:
        context.close()
    assert not script_errors, f"JavaScript errors on the page: {script_errors}"
    assert not csp_violations, f"Content-Security-Policy violations on the page: {csp_violations}"


def test_group_images_newest_first_with_load_more(local_stack, page: Page):
    """13 images (records only, never uploaded) show newest first, 12 per page, then "load more"."""
    base = _base_url(local_stack)
    token = _token(base, "dora")
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
    local_stack, page: Page, chelsea_jpeg: Path, tmp_path: Path, screenshot
):
    """The API unreachable, the storage server refusing an upload (as S3 does when a presigned
    POST has expired), and a file the worker cannot read: each gives a clear message; the refused
    image's record is removed again; the failed one can be retried from its card."""
    base = _base_url(local_stack)
    page.goto(base + "/")
    page.get_by_label("User name").fill("ivan")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signed-in-user")).to_have_text("ivan")

    # The API cannot be reached: a network error message, and the form keeps what was typed.
    page.route("**/graphql", lambda route: route.abort("connectionrefused"))
    page.get_by_label("Name", exact=True).fill("Unlucky")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("error-message").last).to_contain_text("Cannot reach the server")
    expect(page.get_by_label("Name", exact=True)).to_have_value("Unlucky")
    page.unroute("**/graphql")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_test_id("group-name-heading")).to_have_text("Unlucky")
    group_id = page.url.rsplit("/", 1)[-1]

    # The storage server refuses the upload with S3's XML error.
    refusal = (
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
        "<Message>Request has expired</Message></Error>"
    )
    storage = re.compile(r"^(?!%s).*" % re.escape(base))  # every POST that is not to the API
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
    token = _token(base, "emil")
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
