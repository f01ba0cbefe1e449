/**
 * Type-level checks, compiled by `npm run typecheck` (tsconfig.json includes
 * test/**), never run: each `@ts-expect-error` line must fail to compile, and
 * an expectation that compiles fails the typecheck (TS2578, unused directive).
 * test/types.test.ts checks that both hold.
 */
import {
  AdamW,
  MoELayer,
  type ForeignConfig,
  type IgnoredConfigKey,
  type MoELayerGroup,
  type MoELayerOptions,
  type ProcessGroup,
} from "../../lib";

export function options(group: MoELayerGroup): MoELayer[] {
  const base: MoELayerOptions = { dModel: 8, dFF: 16, numExperts: 4 };
  return [
    new MoELayer({ ...base, activation: "swiglu" }, group),
    // @ts-expect-error an activation outside ActivationKind
    new MoELayer({ dModel: 8, dFF: 16, numExperts: 4, activation: "reluu" }),
    // @ts-expect-error a misspelt option
    new MoELayer({ dModel: 8, dFF: 16, numExpert: 8 }),
    // @ts-expect-error snake_case keys are a foreign config: MoELayer.fromForeignConfig
    new MoELayer({ hidden_size: 8, ffn_hidden_size: 16, num_experts: 4 }),
    // @ts-expect-error a dtype the expert weights cannot have
    MoELayer.fromConfig({ ...base, dtype: "int32" }),
    // @ts-expect-error a group that is not a group
    new MoELayer(base, { rank: 0, size: 1 }),
    MoELayer.fromForeignConfig({ hidden_size: 8, moe: { num_experts: 4 } }, group),
  ];
}

export function processGroup(pg: ProcessGroup): readonly IgnoredConfigKey[] {
  const layer = MoELayer.fromForeignConfig({ hidden_size: 8, num_experts: 4 }, pg);
  // @ts-expect-error the ignored keys are the layer's report, not settable
  layer.ignoredConfigKeys = [];
  return new MoELayer({ dModel: 8, dFF: 16, numExperts: 4 }, pg).ignoredConfigKeys;
}

export function foreign(config: ForeignConfig): AdamW {
  // @ts-expect-error the optimizer takes parameters, not a layer
  AdamW.fromConfig(new MoELayer({ dModel: 8, dFF: 16, numExperts: 4 }), config);
  return AdamW.fromConfig(new MoELayer({ dModel: 8, dFF: 16, numExperts: 4 }).parameters(), config);
}
