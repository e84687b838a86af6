// Reads a Green Button feed (the file named on the command line) with two independent npm parsers,
// @cityssm/green-button-parser and espi-parser, and prints what each understood as one JSON object:
// { parser: { updated, meterReadings: [{ self, readingType, readings: [[start, duration, value]] }] } }.
// The linking (MeterReading -> ReadingType, MeterReading -> IntervalBlocks by their `up` link) is the
// Green Button pattern every client follows; the parsing is the packages' own.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'

import { atomToGreenButtonJson } from '@cityssm/green-button-parser'

const require = createRequire(import.meta.url)
const espiParser = require('espi-parser')

const asList = (x) => (x === undefined ? [] : Array.isArray(x) ? x : [x])

function link(links, rel) {
  return links.filter((l) => l.rel === rel).map((l) => l.href)
}

function assemble(updated, entries) {
  // entries: [{ self, up, related: [], kind, content }]
  const byself = new Map(entries.map((e) => [e.self, e]))
  const meterReadings = []
  for (const mr of entries.filter((e) => e.kind === 'MeterReading')) {
    const rt = mr.related.map((h) => byself.get(h)).find((e) => e?.kind === 'ReadingType')
    const collection = mr.related.find((h) => h.endsWith('/IntervalBlock'))
    const readings = []
    for (const block of entries.filter((e) => e.kind === 'IntervalBlock' && e.up === collection)) {
      for (const blockContent of asList(block.content)) {
        for (const r of blockContent.readings) readings.push(r)
      }
    }
    meterReadings.push({ self: mr.self, readingType: rt?.content ?? null, readings })
  }
  return { updated, meterReadings }
}

async function cityssm(xml) {
  const feed = await atomToGreenButtonJson(xml)
  const entries = feed.entries.map((e) => {
    const kind = Object.keys(e.content)[0]
    let content = e.content[kind]
    if (kind === 'IntervalBlock') {
      content = asList(content).map((b) => ({
        readings: asList(b.IntervalReading).map((r) => [r.timePeriod.start, r.timePeriod.duration, r.value])
      }))
    }
    return { self: e.links.self, up: e.links.up, related: e.links.related ?? [], kind, content }
  })
  const updated = feed.updatedDate instanceof Date ? feed.updatedDate.toISOString() : String(feed.updatedDate)
  return assemble(updated, entries)
}

function espi(xml) {
  const { feed } = espiParser(xml)
  const entries = asList(feed.entries ?? feed.entry).map((e) => {
    const links = asList(e.links ?? e.link)
    const kind = Object.keys(e.content)[0]
    let content = e.content[kind]
    if (kind === 'IntervalBlock') {
      const readings = asList(content.IntervalReadings ?? content.IntervalReading)
      content = { readings: readings.map((r) => [Number(r.timePeriod.start), Number(r.timePeriod.duration), Number(r.value)]) }
    } else if (kind === 'ReadingType') {
      content = Object.fromEntries(Object.entries(content).map(([k, v]) => [k, Number(v)]))
    }
    return { self: link(links, 'self')[0], up: link(links, 'up')[0], related: link(links, 'related'), kind, content }
  })
  return assemble(new Date(feed.updated).toISOString(), entries)
}

const xml = readFileSync(process.argv[2], 'utf8')
console.log(JSON.stringify({ cityssm: await cityssm(xml), 'espi-parser': espi(xml) }))
