import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface ChartProps {
  data: uPlot.AlignedData;
  series: uPlot.Series[];
  bands?: uPlot.Band[];
  height?: number;
  yLabel?: string;
  ariaLabel: string;
  yRange?: [number, number];
}

/** A uPlot chart that fills its container's width and follows its resizes. */
export function Chart({ data, series, bands, height = 220, yLabel, ariaLabel, yRange }: ChartProps) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const opts: uPlot.Options = {
      width: Math.max(el.clientWidth, 240),
      height,
      series: [{}, ...series],
      axes: [{ stroke: "currentColor" }, { stroke: "currentColor", label: yLabel ?? "", size: 56 }],
      scales: { x: { time: true }, ...(yRange ? { y: { range: yRange } } : {}) },
      legend: { live: false },
      // The console speaks UTC everywhere; the browser's own zone would contradict the tables.
      tzDate: (ts: number) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      cursor: { drag: { x: true, y: false } },
    };
    if (bands) opts.bands = bands;
    const u = new uPlot(opts, data, el);
    plot.current = u;
    const ro = new ResizeObserver(() => u.setSize({ width: Math.max(el.clientWidth, 240), height }));
    ro.observe(el);
    return () => {
      ro.disconnect();
      u.destroy();
      plot.current = null;
    };
    // The chart is rebuilt when its shape changes; data updates go through setData below.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [series.length, height, yLabel, bands?.length]);

  useEffect(() => {
    plot.current?.setData(data);
  }, [data]);

  return <div className="chart" ref={box} role="img" aria-label={ariaLabel} />;
}
