// The network description changes only with a redeploy: fetched once per page load.
import { api } from "../api";
import type { Network } from "../types";

let network: Promise<Network> | null = null;

export function getNetwork(): Promise<Network> {
  if (!network) {
    network = api.get<Network>("/api/network").catch((e: unknown) => {
      network = null;
      throw e;
    });
  }
  return network;
}
