// `npm run measure`: what an open console costs the control plane. Starts
// the real `dev`, then for each view keeps one console tab open for a while
// and counts the gRPC-Web calls the page makes and the CPU time the dev
// process spends (from /proc), against the same time with no console open.

import { readFileSync } from "node:fs";
import { Client, launch, startDev, stateDir } from "./harness.js";

const SECONDS = Number(process.env.MEASURE_SECONDS ?? "30");

function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  // utime and stime, fields 14 and 15 of the line (clock ticks of 10 ms).
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const state = stateDir();
const dev = await startDev(state);
const pid = dev.proc.pid!;
// Something to show: 50 connections in 5 tenants, a few in groups.
const clients = await Promise.all(
  Array.from({ length: 50 }, (_, i) => Client.open(dev, `tenant-${i % 5}`, `user-${i}`)),
);
for (const [i, c] of clients.entries()) if (i % 2 === 0) c.send({ id: "j", action: "join", payload: { group: "room-a" } });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const rows: string[] = [];
const measure = async (label: string, during: () => Promise<() => number>): Promise<void> => {
  const stop = await during();
  const before = cpuMs(pid);
  const started = Date.now();
  const startCalls = stop();
  await sleep(SECONDS * 1000);
  const secs = (Date.now() - started) / 1000;
  const calls = stop() - startCalls;
  const cpu = (cpuMs(pid) - before) / secs;
  rows.push(`| ${label} | ${(calls / secs).toFixed(2)} | ${cpu.toFixed(1)} ms/s (${(cpu / 10).toFixed(2)}% of a core) |`);
};

await measure("no console open", async () => () => 0);
const browser = await launch();
let calls = 0;
/** A signed-in console tab on `view`, its gRPC-Web calls counted. */
const open = async (view: string) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("request", (r) => {
    if (r.url().includes("/streamer.v1.")) calls++;
  });
  await page.goto(`${dev.consoleUrl}#token=${dev.adminToken}`);
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  await page.locator("#tenant").fill("tenant-0");
  await page.locator("#tenant").dispatchEvent("change");
  await page.getByRole("navigation", { name: "Views" }).getByRole("button", { name: view, exact: true }).click();
  return page;
};
for (const view of ["Overview", "Connections", "Groups", "Requests"]) {
  const page = await open(view);
  await measure(`one console tab on ${view}`, async () => () => calls);
  await page.close();
}
// Ten operators at once, each on the busiest view: the cost per call shows.
{
  const pages = [];
  for (let i = 0; i < 10; i++) pages.push(await open("Requests"));
  await measure("ten console tabs on Requests", async () => () => calls);
  for (const page of pages) await page.close();
}
await browser.close();
await Promise.all(clients.map((c) => c.close()));
await dev.stop();
console.log(`\nconsole load on dev (debug or release as built), ${SECONDS} s each, 50 connections in 5 tenants:\n`);
console.log("| what | gRPC-Web calls/s | dev process CPU |");
console.log("| --- | --- | --- |");
for (const row of rows) console.log(row);
