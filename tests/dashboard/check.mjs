// Type-checks a Grafana dashboard JSON against @grafana/schema with the TypeScript compiler.
// The JSON is pasted into a generated .ts file as object literals, so TypeScript's excess
// property checks catch unknown keys as well as wrong types; each panel's options and custom
// field config are checked against its plugin's schema too (timeseries, state-timeline, stat).
// Usage: node check.mjs path/to/dashboard.json   (exit 0 when it type-checks)
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';

const here = dirname(fileURLToPath(import.meta.url));
const file = process.argv[2];
if (!file) {
  console.error('usage: node check.mjs DASHBOARD.json');
  process.exit(2);
}
const dashboard = JSON.parse(readFileSync(file, 'utf8'));

const plugins = {
  timeseries: 'TimeSeries',
  'state-timeline': 'StateTimeline',
  stat: 'Stat',
};
const lit = (value) => JSON.stringify(value, null, 2);
const lines = [
  "import type { Dashboard } from '@grafana/schema';",
  "import type * as TimeSeries from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';",
  "import type * as StateTimeline from '@grafana/schema/dist/esm/raw/composable/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';",
  "import type * as Stat from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';",
  // Grafana's schema uses TypeScript enums; in JSON they are their string values.
  'type Jsonify<T> = T extends string ? `${T}` : T extends Array<infer U> ? Array<Jsonify<U>> : T extends object ? { [K in keyof T]: Jsonify<T[K]> } : T;',
  `export const dashboard: Jsonify<Dashboard> = ${lit(dashboard)};`,
];
const problems = [];
const all = (dashboard.panels ?? []).flatMap((p) => [p, ...(p.panels ?? [])]);
for (const panel of all) {
  if (panel.type === 'row') continue;
  const ns = plugins[panel.type];
  if (!ns) {
    problems.push(`panel ${panel.id} (${panel.title}): no schema for panel type ${panel.type}`);
    continue;
  }
  lines.push(`export const options_${panel.id}: Jsonify<${ns}.Options> = ${lit(panel.options ?? {})};`);
  if (ns !== 'Stat') {
    lines.push(
      `export const custom_${panel.id}: Jsonify<${ns}.FieldConfig> = ${lit(panel.fieldConfig?.defaults?.custom ?? {})};`,
    );
  }
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
const dir = mkdtempSync(join(here, '.check-'));
writeFileSync(join(dir, 'dashboard.ts'), lines.join('\n') + '\n');
writeFileSync(
  join(dir, 'tsconfig.json'),
  JSON.stringify({
    compilerOptions: {
      strict: true,
      noEmit: true,
      target: 'es2022',
      module: 'esnext',
      moduleResolution: 'bundler',
      skipLibCheck: true,
      typeRoots: [join(here, 'node_modules/@types')],
    },
    files: ['dashboard.ts'],
  }),
);
try {
  execFileSync(join(here, 'node_modules/.bin/tsc'), ['-p', join(dir, 'tsconfig.json')], {
    stdio: 'inherit',
  });
} catch {
  console.error(`type errors in ${file} (generated ${join(dir, 'dashboard.ts')})`);
  process.exit(1);
}
rmSync(dir, { recursive: true, force: true });
console.log(`${file}: ${all.length} panels type-check against @grafana/schema`);
