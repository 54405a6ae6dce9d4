"""Where the plugin finds serve: its URL, the API key and how long to wait, kept in QGIS's settings
(the user's profile) and edited in one small dialog that can test the connection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from qgis.core import QgsSettings
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
)

from .client import DEFAULT_TIMEOUT_S, DEFAULT_URL, ServeClient, ServeError

PREFIX = "ftfsearch/"


@dataclass
class ServeSettings:
    url: str = DEFAULT_URL
    key: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def load(cls) -> "ServeSettings":
        s = QgsSettings()
        try:
            timeout = float(s.value(PREFIX + "timeout_s", DEFAULT_TIMEOUT_S))
        except (TypeError, ValueError):
            timeout = DEFAULT_TIMEOUT_S
        return cls(str(s.value(PREFIX + "url", DEFAULT_URL) or DEFAULT_URL), str(s.value(PREFIX + "api_key", "") or ""),
                   timeout)

    def save(self) -> None:
        s = QgsSettings()
        s.setValue(PREFIX + "url", self.url.strip())
        s.setValue(PREFIX + "api_key", self.key.strip())
        s.setValue(PREFIX + "timeout_s", float(self.timeout_s))

    def client(self) -> ServeClient:
        return ServeClient(self.url, self.key, self.timeout_s)


class SettingsDialog(QDialog):
    """URL, key (hidden as typed) and timeout; "Test" calls ``/api/info`` through ``run`` (a task)."""

    def __init__(self, parent: Any, current: ServeSettings,
                 run: Callable[[str, Callable[[], Any], Callable[[Any, Optional[str]], None]], None]) -> None:
        super().__init__(parent)
        self.setWindowTitle("ftfsearch settings")
        self._run = run
        self.url = QLineEdit(current.url)
        self.key = QLineEdit(current.key)
        self.key.setEchoMode(QLineEdit.Password)
        self.key.setPlaceholderText("none: serve without --keys (loopback)")
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(1, 3600)
        self.timeout.setSuffix(" s")
        self.timeout.setValue(current.timeout_s)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        test = QPushButton("Test connection")
        test.clicked.connect(self.test)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Serve URL", self.url)
        form.addRow("API key", self.key)
        form.addRow("Timeout", self.timeout)
        form.addRow(test, self.result)
        form.addRow(buttons)

    def settings(self) -> ServeSettings:
        return ServeSettings(self.url.text(), self.key.text(), self.timeout.value())

    def test(self) -> None:
        self.result.setText("connecting…")
        try:
            client = self.settings().client()
        except ServeError as exc:
            self.result.setText(str(exc))
            return

        def done(info: Any, error: Optional[str]) -> None:
            if error is not None:
                self.result.setText(error)
            else:
                self.result.setText(f"ftfsearch {info.get('version')}: {info.get('tiles')} tiles in "
                                    f"{info.get('scenes')} scenes")

        self._run("ftfsearch: test connection", client.info, done)
