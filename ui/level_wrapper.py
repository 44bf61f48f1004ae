"""LEVELS in the dialogs: the chosen input's levels as a checklist (level, scale 1:n,
resolution, tiles in the export area), with select-all/none and a range helper.

The list is read from the input when INPUT_SERVICE changes, and its tile counts follow
EXPORT_EXTENT and AREA_OF_INTEREST. The value stays the plain LEVELS string ("0-5,7") the
algorithm and qgis_process take; the modeler offers model string inputs, the batch dialog a
line edit.
"""
from __future__ import annotations

from typing import Callable, Optional

from processing.gui.wrappers import DIALOG_BATCH, DIALOG_MODELER
from qgis.core import QgsProcessingFeedback
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtGui import QPalette
from qgis.PyQt.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import CacheError
from ..core.selection.level_table import LevelRow
from ..core.selection.levels import (
    LevelRange,
    compact_levels,
    in_ranges,
    level_ranges,
    ranges_text,
)
from ..processing_provider.translation import tr
from .text_wrapper import TextParameterWrapper

WATCHED = ("INPUT_SERVICE", "EXPORT_EXTENT", "AREA_OF_INTEREST", "AUTHCFG", "TOKEN")
COLUMNS = ("Level", "Scale", "Resolution", "Tiles")
RELOAD_DELAY_MS = 400
LEVEL_ROLE = Qt.ItemDataRole.UserRole  # an item's level ID
CHECKED, UNCHECKED = Qt.CheckState.Checked, Qt.CheckState.Unchecked
NUMBER_ALIGNMENT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter


class LevelChecklist(QWidget):
    """A checkable table of levels; `value()` is the checked levels as "0-5,7"."""

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.tree = QTreeWidget()
        self.tree.setObjectName("levelList")
        self.tree.setHeaderLabels([tr(column) for column in COLUMNS])
        self.tree.setRootIsDecorated(False)
        self.tree.setAlternatingRowColors(True)
        self.tree.setMinimumHeight(220)
        self.tree.header().setStretchLastSection(False)
        layout.addWidget(self.tree)
        buttons = QHBoxLayout()
        self.all_button = QPushButton(tr("Select all"))
        self.none_button = QPushButton(tr("Clear"))
        self.all_button.clicked.connect(lambda: self.check(lambda level: True))
        self.none_button.clicked.connect(lambda: self.check(lambda level: False))
        buttons.addWidget(self.all_button)
        buttons.addWidget(self.none_button)
        buttons.addStretch(1)
        buttons.addWidget(QLabel(tr("Levels")))
        self.first = QSpinBox()
        self.last = QSpinBox()
        buttons.addWidget(self.first)
        buttons.addWidget(QLabel(tr("to")))
        buttons.addWidget(self.last)
        self.range_button = QPushButton(tr("Select range"))
        self.range_button.clicked.connect(lambda: self.check(
            lambda level: self.first.value() <= level <= self.last.value()))
        buttons.addWidget(self.range_button)
        layout.addLayout(buttons)
        self.status = QLabel(tr("Choose an input to list its levels. None checked = all levels."))
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.changed: Callable[[], None] = lambda: None
        self.tree.itemChanged.connect(lambda *_: self.changed())
        self._pending: Optional[list[LevelRange]] = None  # set before the rows arrived

    def set_rows(self, rows: list[LevelRow], present: set[int]) -> None:
        """Show `rows`, keeping the checked levels; levels without tiles in the input are
        greyed out."""
        pending, self._pending = self._pending, None
        checked = self.checked() if pending is None else {
            row.level for row in rows if in_ranges(row.level, pending)}
        self.tree.blockSignals(True)
        self.tree.clear()
        for row in rows:
            item = QTreeWidgetItem([str(row.level), f"1:{row.scale:,.0f}",
                                    f"{row.resolution:.6g}", row.tiles_text()])
            item.setData(0, LEVEL_ROLE, row.level)
            item.setCheckState(0, CHECKED if row.level in checked else UNCHECKED)
            for column in (1, 2, 3):
                item.setTextAlignment(column, NUMBER_ALIGNMENT)
            if row.level not in present:
                item.setForeground(0, self.palette().color(QPalette.ColorGroup.Disabled,
                                                          QPalette.ColorRole.Text))
                item.setToolTip(0, tr("The input has no tiles at this level"))
            self.tree.addTopLevelItem(item)
        self.tree.blockSignals(False)
        for column in range(len(COLUMNS)):
            self.tree.resizeColumnToContents(column)
        levels = [row.level for row in rows]
        for spin in (self.first, self.last):
            spin.setRange(min(levels, default=0), max(levels, default=0))
        self.last.setValue(max(levels, default=0))
        self.changed()

    def levels(self) -> list[int]:
        return [self.tree.topLevelItem(i).data(0, LEVEL_ROLE)
                for i in range(self.tree.topLevelItemCount())]

    def checked(self) -> set[int]:
        items = (self.tree.topLevelItem(i) for i in range(self.tree.topLevelItemCount()))
        return {item.data(0, LEVEL_ROLE) for item in items if item.checkState(0) == CHECKED}

    def check(self, wanted: Callable[[int], bool]) -> None:
        self.tree.blockSignals(True)
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            item.setCheckState(0, CHECKED if wanted(item.data(0, LEVEL_ROLE))
                               else UNCHECKED)
        self.tree.blockSignals(False)
        self.changed()

    def value(self) -> str:
        if self._pending is not None:
            return ranges_text(self._pending)
        return compact_levels(sorted(self.checked()))

    def set_value(self, ranges: list[LevelRange]) -> None:
        if self.tree.topLevelItemCount() == 0:
            self._pending = list(ranges)
        else:
            self.check(lambda level: in_ranges(level, ranges))


class LevelListWrapper(TextParameterWrapper):
    def create_dialog_widget(self):
        widget = LevelChecklist()
        widget.changed = lambda: self.widgetValueHasChanged.emit(self)
        self._timer = QTimer(widget)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RELOAD_DELAY_MS)
        self._timer.timeout.connect(self.refresh_levels)
        self._watched: dict = {}
        self._opened = None  # (input parameters, LevelSource) of the input last read
        widget.destroyed.connect(self._close)
        return widget

    def postInitialize(self, wrappers):
        if self.dialogType in (DIALOG_MODELER, DIALOG_BATCH):
            return
        for wrapper in wrappers:
            name = wrapper.parameterDefinition().name()
            if name in WATCHED:
                self._watched[name] = wrapper
                wrapper.widgetValueHasChanged.connect(lambda *_: self._timer.start())
        self._timer.start()

    def parameters(self) -> dict:
        return {name: wrapper.parameterValue() for name, wrapper in self._watched.items()}

    def refresh_levels(self) -> None:
        """Read the input's levels (again when the input changed) and recount the tiles."""
        from ..processing_provider.level_source import LevelSource

        parameters = self.parameters()
        widget = self.widget
        key = tuple(str(parameters.get(name) or "") for name in ("INPUT_SERVICE", "AUTHCFG",
                                                                     "TOKEN"))
        if not key[0]:
            widget.set_rows([], set())
            widget.status.setText(tr("Choose an input to list its levels."))
            return
        definitions = {name: wrapper.parameterDefinition()
                       for name, wrapper in self._watched.items()}
        try:
            if self._opened is None or self._opened[0] != key:
                if self._opened is not None:
                    self._opened[1].close()
                    self._opened = None
                widget.status.setText(tr("Reading the input's levels…"))
                self._opened = (key, LevelSource.open(definitions, parameters))
            source = self._opened[1]
            rows = source.rows(definitions, parameters, QgsProcessingFeedback())
        except Exception as exc:  # shown to the user; the run reports it again in full
            widget.set_rows([], set())
            widget.status.setText(tr("Cannot list the levels: {}").format(exc))
            return
        widget.set_rows(rows, source.present_levels)
        widget.status.setText(source.describe() + tr(
            " Tiles: in the export extent or area of interest (the data extent without one). "
            "None checked = all levels."))

    def _close(self, *_) -> None:
        if self._opened is not None:
            self._opened[1].close()
            self._opened = None

    def set_dialog_value(self, value) -> None:
        try:
            self.widget.set_value(level_ranges(str(value or "")))
        except CacheError:
            self.widget.set_value([])

    def dialog_value(self):
        return self.widget.value()
