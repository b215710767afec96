import { PERIODS } from "../lib/periods";

export function PeriodPicker({ value, onChange }: { value: string; onChange: (v: string) => void }) {
  return (
    <label className="inline">
      Period{" "}
      <select value={value} onChange={(e) => onChange(e.target.value)}>
        {PERIODS.map((p) => (
          <option key={p.value} value={p.value}>
            {p.label}
          </option>
        ))}
      </select>
    </label>
  );
}
