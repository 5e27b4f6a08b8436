// The two UIs after `make demo`, looked at as a person would (docs/screenshots.sh starts the
// servers and runs this): the Dagster UI's latest eval_results materialization with its retention
// plot (markdown metadata holding a data-URI image) open, and MLflow's model registry listing the
// versions with their descriptions (update, method, domain, parent version).
//
//   node docs/screenshots.mjs OUT_DIR   (playwright-core driving Debian's /usr/bin/chromium)
import { chromium } from "playwright-core";

const out = process.argv[2] ?? "docs/img";
const model = process.env.MODEL_NAME ?? "sdft-ops-policy";
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
                                        args: ["--no-sandbox", "--disable-gpu"] });
const page = await browser.newPage({ viewport: { width: 1600, height: 1300 } });

async function clickIfThere(locator, timeout = 3000) {
  try { await locator.first().click({ timeout }); return true; } catch { return false; }
}

// Dagster: the asset's page, newest materialization; first-visit modals dismissed.
await page.goto("http://127.0.0.1:3000/assets/eval_results", { waitUntil: "networkidle" });
for (const name of [/dismiss/i, /no thanks/i, /not now/i, /close/i, /skip/i]) {
  await clickIfThere(page.getByRole("button", { name }), 1500);
}
await page.keyboard.press("Escape");
// the retention plot is the materialization's `retention_plot` markdown entry
await clickIfThere(page.locator("tr", { hasText: "retention_plot" }).getByText(/show markdown/i), 5000);
await page.waitForTimeout(1500);
const plot = page.locator("img[src^='data:image/png']");
if (await plot.count()) {
  await plot.first().scrollIntoViewIfNeeded();
}
await page.screenshot({ path: `${out}/dagster_eval.png`, fullPage: false });
console.log(`dagster: retention plot image ${await plot.count() ? "shown" : "NOT shown"}`);

// MLflow: the registered model's versions; the assistant side panel closed if it opens.
await page.goto(`http://127.0.0.1:5000/#/models/${model}`, { waitUntil: "networkidle" });
await page.waitForTimeout(2000);
for (const name of [/close/i, /dismiss/i, /collapse/i]) {
  await clickIfThere(page.getByRole("button", { name }), 1500);
}
await page.screenshot({ path: `${out}/mlflow_lineage.png`, fullPage: true });
const text = await page.locator("body").innerText();
console.log(`mlflow: lineage ${/parent_version/i.test(text) && /champion/i.test(text) ? "shown" : "NOT shown"}`);
await browser.close();
