// End-to-end test of kvmkit's web console in a real browser (Debian's
// Chromium, headless, driven by playwright-core). scripts/web-e2e.sh starts
// the daemon and passes: KVMKIT (the binary), STATE (its state dir), BASE
// (http://127.0.0.1:PORT), TOKEN, SHOTS (where the screenshots go).
import { chromium } from "playwright-core";
import { spawnSync } from "node:child_process";

const { KVMKIT, STATE, BASE, TOKEN, SHOTS } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
let failures = 0, passed = 0;
function check(ok, what) {
  if (ok) { passed++; console.log("ok   " + what); } else { failures++; console.log("FAIL " + what); }
}
async function until(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    try { const v = await fn(); if (v) { check(true, what); return v; } } catch (e) { /* retried */ }
    if (Date.now() > end) { check(false, what + " (timed out)"); return null; }
    await new Promise((r) => setTimeout(r, 150));
  }
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.on("pageerror", (e) => check(false, "page error: " + e.message));

  // No token: 401, for the page and the API.
  const anon = await browser.newContext();
  check((await anon.request.get(BASE + "/")).status() === 401, "the page without the token: 401");
  check((await anon.request.get(BASE + "/api/vms")).status() === 401, "the API without the token: 401");
  check((await anon.request.get(BASE + "/ws/x/console")).status() === 401, "the WebSocket without the token: 401");
  await anon.close();

  await page.goto(`${BASE}/?token=${TOKEN}`);
  await until("the VM list loads", () => page.locator("#vms").count());

  // The create form: a refusal names the field.
  await page.fill("#create [name=name]", "e2e");
  await page.fill("#create [name=workload]", "ticks:200");
  await page.fill("#create [name=cpus]", "0");
  await page.fill("#create [name=memory]", "32");
  await page.click("#add-disk");
  await page.click("#define");
  await until("a bad vCPU count is refused with its reason", async () => (await page.textContent("#form-error")).includes("cpus"));
  check(await page.locator("#create [name=cpus].bad").count() === 1, "the vCPU field is marked");
  await page.fill("#create [name=cpus]", "1");
  await page.click("#define");
  await until("an empty disk path is refused", async () => (await page.textContent("#form-error")).includes("disk 1"));
  check(await page.locator("#disks .disk-path.bad").count() === 1, "the disk field is marked");
  await page.screenshot({ path: `${SHOTS}/web-create-form.png`, fullPage: true });
  await page.click("#disks .rm");
  await page.click("#define");
  if (!(await until("the VM is defined", () => page.locator('tr[data-vm="e2e"]').count(), 40000))) {
    console.log("message: " + (await page.textContent("#msg")) + " / " + (await page.textContent("#form-error")));
  }

  // Start it from the list.
  await page.click('tr[data-vm="e2e"] button[data-a="start"]');
  await until("the VM runs", async () => (await page.textContent('tr[data-vm="e2e"] .state')) === "running");
  await page.screenshot({ path: `${SHOTS}/web-vms.png`, fullPage: true });

  // Its page: console output in xterm.js.
  await page.click('tr[data-vm="e2e"] a');
  const rows = page.locator("#term .xterm-rows");
  await until("console output shows in the page", async () => (await rows.textContent()).includes("tick="));
  await until("the console is read-write", async () => (await page.textContent("#console-mode")).includes("read-write"));

  // Another client is read-only while the page holds the input.
  const other = spawnSync(KVMKIT, ["vm", "console", "e2e", "--state-dir", STATE], { input: "\x1d", timeout: 10000 });
  check(String(other.stderr).includes("read-only"), "kvmkit vm console is read-only while the page types");

  // Typing: the bytes reach the VMM's console input (kvmkit's guest does not read them).
  const inBytes = async () => (await (await page.request.get(`${BASE}/api/vms/e2e/metrics`)).json()).console_input_bytes;
  const before = await until("the console input counter reads", async () => { const v = await inBytes(); return v == null ? null : { v }; });
  await page.click("#term");
  await page.keyboard.type("hello kvmkit");
  await page.keyboard.press("Enter");
  await until("13 typed bytes reach the VM's console", async () => (await inBytes()) - before.v >= 13);

  // The charts update.
  await until("the exits chart draws points", async () => Number(await page.getAttribute("#chart-exits", "data-points")) >= 8);
  const max1 = Number(await page.getAttribute("#chart-exits", "data-max"));
  check(max1 > 1, `the exits chart has a non-zero rate (max ${max1}/s)`);
  await page.screenshot({ path: `${SHOTS}/web-console.png`, fullPage: true });

  // Pause: the state says so and the ticks stop; resume: they go on.
  // The last tick in xterm's buffer (what the page received, whatever the viewport shows).
  const buffer = () => page.evaluate(() => {
    const b = term.buffer.active, out = [];
    for (let i = Math.max(0, b.length - 40); i < b.length; i++) out.push(b.getLine(i).translateToString(true));
    return out.join("\n");
  });
  const ticks = async () => ((await buffer()).match(/tick=(\d+)/g) || []).map((t) => +t.slice(5)).pop() || 0;
  await page.click('#vm-actions button[data-a="pause"]');
  await until("the VM is paused", async () => (await page.textContent("#vm-state")).includes("paused"));
  const t1 = await ticks();
  await new Promise((r) => setTimeout(r, 1200));
  check(await ticks() === t1, `no ticks while paused (tick=${t1})`);
  await page.click('#vm-actions button[data-a="resume"]');
  await until("the VM runs again", async () => (await page.textContent("#vm-state")).includes("running"));
  if (!(await until("ticks go on after resume", async () => (await ticks()) > t1))) {
    console.log("console buffer:\n" + (await buffer()).slice(-300) + "\nmode: " + (await page.textContent("#console-mode")));
    console.log("vm logs: " + spawnSync(KVMKIT, ["vm", "logs", "e2e", "--lines", "3", "--state-dir", STATE]).stdout);
  }

  // Stop.
  await page.click('#vm-actions button[data-a="stop"]');
  await until("the VM is stopped", async () => (await page.textContent("#vm-state")).includes("stopped"), 30000);
  await until("the console says it closed", async () => (await page.textContent("#console-mode")).includes("closed"));

  // Bench results.
  await page.goto(`${BASE}/#/bench`);
  await until("the bench table shows", () => page.locator("#bench table tbody tr").count());
  await until("the bench charts load", async () => page.evaluate(() => [...document.querySelectorAll("#bench img")].every((i) => i.complete && i.naturalWidth > 0) && document.querySelectorAll("#bench img").length > 0));
  await page.screenshot({ path: `${SHOTS}/web-bench.png`, fullPage: true });
} finally {
  await browser.close();
}
console.log(`${passed} passed, ${failures} failed`);
process.exit(failures ? 1 : 0);
